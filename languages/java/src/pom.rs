//! What the plugin reads from a `pom.xml` without running Maven: that it
//! parses (a syntax error is reported with its line), the project's
//! coordinates, modules, declared dependencies (to point a resolution
//! failure at its line), the main class, and the dependency plugin version.

use std::path::{Path, PathBuf};

use ftl::PluginError;

/// A declared `<dependency>` (in `<dependencies>` or `<dependencyManagement>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub group_id: String,
    pub artifact_id: String,
    /// As written (may be a property reference or a range).
    pub version: Option<String>,
    pub line: usize,
}

/// One parsed pom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pom {
    /// Relative to the source root.
    pub file: PathBuf,
    pub group_id: Option<String>,
    pub artifact_id: String,
    pub version: Option<String>,
    pub packaging: String,
    /// `<modules>` entries (directories relative to this pom's directory).
    pub modules: Vec<String>,
    pub dependencies: Vec<Dependency>,
    /// The first `<mainClass>` (jar, exec, spring-boot plugin config), or a
    /// `start-class` / `main.class` / `exec.mainClass` property.
    pub main_class: Option<String>,
    /// The `maven-dependency-plugin` version the pom declares.
    pub dependency_plugin: Option<String>,
    /// Whether any version (dependency or parent) is a SNAPSHOT.
    pub has_snapshots: bool,
    /// Whether any dependency version is a range or LATEST/RELEASE.
    pub has_ranges: bool,
}

fn child<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    child(node, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Parses `text` (the pom at `file`, relative to the source root).
pub fn parse(file: &Path, text: &str) -> Result<Pom, PluginError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| {
        let pos = e.pos();
        let mut row = pos.row as usize;
        // An error found at the start of a line (an unclosed tag on the line
        // before) belongs to the previous non-blank line.
        let lines: Vec<&str> = text.lines().collect();
        if let Some(line) = lines.get(row.wrapping_sub(1)) {
            let before: String = line
                .chars()
                .take((pos.col as usize).saturating_sub(1))
                .collect();
            if before.trim().is_empty() {
                if let Some(prev) = (1..row).rev().find(|&r| !lines[r - 1].trim().is_empty()) {
                    row = prev;
                }
            }
        }
        PluginError::new(format!("pom.xml is not well-formed XML: {e}"))
            .in_file(file, Some(row))
            .hint("fix the XML; `mvn validate` shows the same error")
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "project" {
        return Err(PluginError::new(format!(
            "the root element is <{}>, not <project>",
            root.tag_name().name()
        ))
        .in_file(file, Some(doc.text_pos_at(root.range().start).row as usize)));
    }
    let line_of = |n: roxmltree::Node<'_, '_>| doc.text_pos_at(n.range().start).row as usize;
    let parent = child(root, "parent");
    let artifact_id = child_text(root, "artifactId").ok_or_else(|| {
        PluginError::new("the project has no <artifactId>").in_file(file, Some(line_of(root)))
    })?;
    let mut pom = Pom {
        file: file.to_path_buf(),
        group_id: child_text(root, "groupId")
            .or_else(|| parent.and_then(|p| child_text(p, "groupId"))),
        artifact_id,
        version: child_text(root, "version")
            .or_else(|| parent.and_then(|p| child_text(p, "version"))),
        packaging: child_text(root, "packaging").unwrap_or_else(|| "jar".into()),
        ..Default::default()
    };
    if let Some(m) = child(root, "modules") {
        pom.modules = m
            .children()
            .filter(|c| c.is_element() && c.tag_name().name() == "module")
            .filter_map(|c| c.text().map(|t| t.trim().to_string()))
            .collect();
    }
    let is_snapshot = |v: &str| v.ends_with("-SNAPSHOT");
    if parent
        .and_then(|p| child_text(p, "version"))
        .is_some_and(|v| is_snapshot(&v))
    {
        pom.has_snapshots = true;
    }
    for node in root.descendants().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "dependency" => {
                let (Some(group_id), Some(artifact_id)) =
                    (child_text(node, "groupId"), child_text(node, "artifactId"))
                else {
                    continue;
                };
                let version = child_text(node, "version");
                if let Some(v) = &version {
                    if is_snapshot(v) {
                        pom.has_snapshots = true;
                    }
                    if v.starts_with('[') || v.starts_with('(') || v == "LATEST" || v == "RELEASE" {
                        pom.has_ranges = true;
                    }
                }
                // Plugin dependencies are not the app's.
                let in_plugin = node
                    .ancestors()
                    .any(|a| a.is_element() && a.tag_name().name() == "plugin");
                if !in_plugin {
                    // The line naming the artifact: what a user fixes.
                    let at = child(node, "artifactId").unwrap_or(node);
                    pom.dependencies.push(Dependency {
                        group_id,
                        artifact_id,
                        version,
                        line: line_of(at),
                    });
                }
            }
            "mainClass" | "start-class" | "main.class" | "exec.mainClass"
                if pom.main_class.is_none() =>
            {
                pom.main_class = node
                    .text()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty() && !t.contains("${"));
            }
            "plugin"
                if child_text(node, "artifactId").as_deref() == Some("maven-dependency-plugin") =>
            {
                if let Some(v) = child_text(node, "version").filter(|v| !v.contains("${")) {
                    pom.dependency_plugin = Some(v);
                }
            }
            _ => {}
        }
    }
    Ok(pom)
}

/// The line in `pom` that declares `group:artifact`, or failing that any
/// dependency on `artifact`.
pub fn dependency_line(pom: &Pom, group: &str, artifact: &str) -> Option<usize> {
    pom.dependencies
        .iter()
        .find(|d| d.group_id == group && d.artifact_id == artifact)
        .or_else(|| pom.dependencies.iter().find(|d| d.artifact_id == artifact))
        .map(|d| d.line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POM: &str = r#"<?xml version="1.0"?>
<project>
  <modelVersion>4.0.0</modelVersion>
  <groupId>com.example</groupId>
  <artifactId>hello</artifactId>
  <version>1.0.0</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.commons</groupId>
      <artifactId>commons-lang3</artifactId>
      <version>3.12.0</version>
    </dependency>
    <dependency>
      <groupId>com.example</groupId>
      <artifactId>snap</artifactId>
      <version>2.0-SNAPSHOT</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <artifactId>maven-jar-plugin</artifactId>
        <configuration><archive><manifest>
          <mainClass>com.example.Main</mainClass>
        </manifest></archive></configuration>
      </plugin>
      <plugin>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.5.0</version>
        <dependencies><dependency><groupId>x</groupId><artifactId>y</artifactId></dependency></dependencies>
      </plugin>
    </plugins>
  </build>
</project>
"#;

    #[test]
    fn reads_what_the_plan_needs() {
        let pom = parse(Path::new("pom.xml"), POM).unwrap();
        assert_eq!(pom.artifact_id, "hello");
        assert_eq!(pom.group_id.as_deref(), Some("com.example"));
        assert_eq!(pom.packaging, "jar");
        assert_eq!(pom.main_class.as_deref(), Some("com.example.Main"));
        assert_eq!(pom.dependency_plugin.as_deref(), Some("3.5.0"));
        assert!(pom.has_snapshots);
        assert!(!pom.has_ranges);
        assert_eq!(
            pom.dependencies.len(),
            2,
            "plugin dependencies are not the app's"
        );
        assert_eq!(
            dependency_line(&pom, "org.apache.commons", "commons-lang3"),
            Some(10)
        );
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let bad = POM.replace(
            "<artifactId>commons-lang3</artifactId>",
            "<artifactId>commons-lang3</artifactId",
        );
        let e = parse(Path::new("pom.xml"), &bad).unwrap_err();
        assert_eq!(e.file.as_deref(), Some(Path::new("pom.xml")));
        assert_eq!(e.line, Some(10), "the unclosed tag's line: {e}");
        assert!(
            e.to_string()
                .starts_with("pom.xml:10: pom.xml is not well-formed XML"),
            "{e}"
        );
    }

    #[test]
    fn ranges_are_unpinned() {
        let p = POM.replace("<version>3.12.0</version>", "<version>[3.0,4.0)</version>");
        assert!(parse(Path::new("pom.xml"), &p).unwrap().has_ranges);
    }
}
