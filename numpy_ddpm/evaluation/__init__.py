"""How a run is measured and shown: exact densities of the toy sets, distances to the data,
a digit classifier and the Fréchet distance in its features, the bound as the demos report it,
and the plots."""
