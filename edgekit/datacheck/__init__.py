"""`edgekit data check`: the applications over the data layer that make a validation figure honest:
duplicates, leakage between splits, balance, odd images and likely label errors, in one report."""
