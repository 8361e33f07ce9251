"""Looking inside trained networks: figures and the arrays behind them.

One module per kind of figure; each takes a model (and data) and returns arrays, and a ``plot_*``
function turns those into a matplotlib figure (Agg backend, imported inside the function):

    reconstructions   the run's 32 fixed images, reconstruction grids (PNG) and their GIF
    routing           coupling coefficients c[j, i] and agreement: per class, per example, entropy
    perturbation      tweak each dimension of the winning capsule and decode (the authors' figure)
    filters           first-layer convolution filters and feature maps
    curves            training curves from metrics.jsonl
    multimnist        the two-digit reading of a model and the figure of overlapping pairs
    imageio           PNG/GIF writing (Pillow) and figure saving, all atomic

Analysis sits below training (it reads only models, data, capsules and io), so the training
callbacks draw their figures with it.

``effcn visualize RUN`` (effcn.tools.visualize) writes all of them into ``RUN/figures``.
"""
