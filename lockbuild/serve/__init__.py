"""Files that go into the image (the launcher). Not imported by lockbuild itself."""
