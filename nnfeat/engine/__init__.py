"""The render engine: image parameterizations (:mod:`~nnfeat.engine.param`), transforms
(:mod:`~nnfeat.engine.transforms`), objectives and their expression grammar (:mod:`~nnfeat.engine.objectives`,
:mod:`~nnfeat.engine.expr`), Redirected ReLU (:mod:`~nnfeat.engine.relu`), the spectrum priors
(:mod:`~nnfeat.engine.spectrum`) and the optimization loop."""
