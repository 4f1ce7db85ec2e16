"""What the user points at: checkpoint folders found and loaded safely, and the --model / --data / --loss specs."""
