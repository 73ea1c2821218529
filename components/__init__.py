"""KFP components: thin adapters that resolve paths, call one kdflow library function, write outputs."""
