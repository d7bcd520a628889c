"""Networks: generators, critics, miners and the metric classifier (one frozen config dataclass each)."""

from core.formats import OnnxGenerator
from core.nets.classifier import Classifier, ClassifierConfig
from core.nets.dcgan import DCGANGenerator, DCGANGeneratorConfig
from core.nets.gan import Critic, CriticConfig, Generator, GeneratorConfig
from core.nets.miner import ClassEmbeddingMiner, JointMiner, JointMinerConfig, Miner, MinerConfig, generate

GENERATORS = (Generator, DCGANGenerator, OnnxGenerator)  # what may serve as a source's G
AnyGenerator = Generator | DCGANGenerator | OnnxGenerator



def new_like(G: AnyGenerator) -> AnyGenerator:
    """A new generator of G's kind and config, freshly initialised; an ONNX generator is rebuilt from its graph
    (with the weights the graph was uploaded with: it has no initialisation of its own)."""
    if isinstance(G, OnnxGenerator):
        return OnnxGenerator(G.cfg, G.graph_bytes())
    return type(G)(G.cfg)  # type: ignore[arg-type]


__all__ = [
    "new_like",
    "AnyGenerator",
    "DCGANGenerator",
    "DCGANGeneratorConfig",
    "GENERATORS",
    "ClassEmbeddingMiner",
    "Classifier",
    "ClassifierConfig",
    "Critic",
    "CriticConfig",
    "Generator",
    "GeneratorConfig",
    "JointMiner",
    "JointMinerConfig",
    "Miner",
    "MinerConfig",
    "OnnxGenerator",
    "generate",
]
