"""ESPnet2 tasks of this project."""
