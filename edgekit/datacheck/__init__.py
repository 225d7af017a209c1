"""Data checks that make a validation figure honest: duplicates, leakage between splits, balance,
odd images and likely label errors (`edgekit data check`), and the group-aware split `train` uses."""
