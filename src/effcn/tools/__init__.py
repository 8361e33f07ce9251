"""Tools built on the library: bench, compare, runs, sweep, visualize, import_keras, export."""
