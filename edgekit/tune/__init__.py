"""`edgekit tune`: search widths, input sizes, recipes and training knobs for the most accurate model
within a latency (and size, accuracy) budget on a real device, on Optuna."""
