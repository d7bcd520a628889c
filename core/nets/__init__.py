"""Networks: generators, critics, miners and the metric classifier (one frozen config dataclass each)."""

from core.nets.classifier import Classifier, ClassifierConfig
from core.nets.gan import Critic, CriticConfig, Generator, GeneratorConfig
from core.nets.miner import ClassEmbeddingMiner, JointMiner, JointMinerConfig, Miner, MinerConfig

__all__ = [
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
]
