"""Networks: generators, critics, miners and the metric classifier (one frozen config dataclass each)."""

from core.nets.classifier import Classifier, ClassifierConfig
from core.nets.dcgan import DCGANGenerator, DCGANGeneratorConfig
from core.nets.gan import Critic, CriticConfig, Generator, GeneratorConfig
from core.nets.miner import ClassEmbeddingMiner, JointMiner, JointMinerConfig, Miner, MinerConfig, generate

GENERATORS = (Generator, DCGANGenerator)  # what may serve as a source's G
AnyGenerator = Generator | DCGANGenerator

__all__ = [
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
    "generate",
]
