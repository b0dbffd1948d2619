"""nnfeat: see what neural networks learned.

Quick start::

    import nnfeat
    model = nnfeat.load_model("cifar10-resnet20")
    result = nnfeat.render(model, "layer3:0..3", steps=256)   # one unit per image (see nnfeat.units)
    result.images           # (4, 3, 32, 32) RGB in [0, 1]
    result.save("out/layer3")  # render.png (captioned sheet), render-<i>.png, render.json
    result                  # in a notebook: the captioned sheet

Every operation (``render``, ``microscope``, ``examples``, ``build_atlas``, ``heatmap``, ``filters``, ``project``,
``saliency``, ``attention``, ``uncertainty``, ``graph``, ``report``, ``spectrum``) returns a result with ``.images``,
``.save(dir)`` and a notebook picture (:mod:`nnfeat.ops.results`).
"""

from nnfeat import objectives
from nnfeat.ops.atlas import AtlasResult, AtlasSettings, build_atlas
from nnfeat.data import ImageSet, load_images
from nnfeat.device import resolve_device
from nnfeat.errors import NnfeatError
from nnfeat.ops.examples import ExamplesResult, examples
from nnfeat.engine.expr import parse_objective
from nnfeat.ops.microscope import MicroscopeResult, microscope
from nnfeat.models.base import Model
from nnfeat.models.text import TokenBatch, TokenModel
from nnfeat.models.tokenizers import CallableTokenizer, CharTokenizer, Tokenizer, WordTokenizer
from nnfeat.texts import TextSet, load_texts
from nnfeat.models.zoo import load_model
from nnfeat.ops.render import RenderResult, evaluate, render
from nnfeat.units import Units, parse_units
from nnfeat.ops.report import ReportResult, report
from nnfeat.ops.attention import AttentionResult, attention
from nnfeat.ops.filters import FiltersResult, filters
from nnfeat.ops.graph import GraphResult, graph
from nnfeat.ops.heatmap import HeatmapResult, heatmap
from nnfeat.ops.project import ProjectionResult, project
from nnfeat.ops.project_tokens import TokenProjectionResult, project_tokens
from nnfeat.ops.token_attention import TokenAttentionResult, token_attention
from nnfeat.ops.logit_lens import LogitLensResult, logit_lens
from nnfeat.models.embedding_file import read_embedding_file, write_word2vec
from nnfeat.ops.saliency import SaliencyResult, saliency
from nnfeat.ops.spectrum import SpectrumResult, spectrum
from nnfeat.ops.uncertainty import UncertaintyResult, uncertainty

__version__ = "0.1.0"

__all__ = ["CallableTokenizer", "CharTokenizer", "TextSet", "TokenBatch", "TokenModel", "Tokenizer", "WordTokenizer",
           "load_texts", "TokenProjectionResult", "project_tokens", "TokenAttentionResult", "token_attention", "LogitLensResult", "logit_lens",
           "read_embedding_file", "write_word2vec", "AtlasResult", "AtlasSettings", "AttentionResult", "ExamplesResult", "FiltersResult", "GraphResult",
           "HeatmapResult", "ImageSet", "MicroscopeResult", "Model", "NnfeatError", "ProjectionResult", "RenderResult",
           "ReportResult", "SaliencyResult", "SpectrumResult", "UncertaintyResult", "Units", "attention", "build_atlas", "evaluate",
           "examples", "filters", "graph", "heatmap", "load_images", "load_model", "microscope", "objectives",
           "parse_objective", "parse_units", "project", "render", "report", "resolve_device", "saliency", "spectrum",
           "uncertainty", "__version__"]
