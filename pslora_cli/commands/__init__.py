"""The commands' work: each module runs one CLI command (or a family) on the library below it; cli/ parses
the arguments and prints; nothing in the library imports from here."""
