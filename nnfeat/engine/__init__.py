"""The render engine: image parameterizations (:mod:`~nnfeat.engine.param`), transforms
(:mod:`~nnfeat.engine.transforms`), objectives (:mod:`~nnfeat.engine.objectives`: the vocabulary, built on
:mod:`~nnfeat.engine.objective` and :mod:`~nnfeat.engine.regularizers`) and their expression grammar
(:mod:`~nnfeat.engine.expr`, with :mod:`~nnfeat.engine.expr_text` and :mod:`~nnfeat.engine.expr_names`),
Redirected ReLU (:mod:`~nnfeat.engine.relu`), the spectrum priors (:mod:`~nnfeat.engine.spectrum`) and the
optimization loop (:mod:`~nnfeat.engine.loop`, its settings in :mod:`~nnfeat.engine.settings`)."""
