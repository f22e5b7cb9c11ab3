require("ms"); require("left-pad");
