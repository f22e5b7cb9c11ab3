import six
print(six.PY3)
