"""One module per operation: the function and its :class:`~nnfeat.ops.results.Result` (``render``,
``microscope``, ``examples``, ``atlas``, ``heatmap``, ``filters``, ``project``, ``saliency``, ``attention``,
``uncertainty``, ``graph``, ``report``, ``spectrum``), composed by ``demo``. See docs/ARCHITECTURE.md."""
