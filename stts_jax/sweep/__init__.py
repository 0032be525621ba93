"""Ablation sweeps: grids of runs trained and evaluated one after another (`runner`), or printed as pod commands;
`aggregate` tabulates and plots them."""
