"""Networks: generators, critics, miners and the metric classifier (one frozen config dataclass each)."""

from core.formats import OnnxCritic, OnnxGenerator
from core.nets.classifier import Classifier, ClassifierConfig
from core.nets.dcgan import DCGANGenerator, DCGANGeneratorConfig
from core.nets.gan import Critic, CriticConfig, Generator, GeneratorConfig
from core.nets.miner import ClassEmbeddingMiner, JointMiner, JointMinerConfig, Miner, MinerConfig, generate

GENERATORS = (Generator, DCGANGenerator, OnnxGenerator)  # what may serve as a source's G
AnyGenerator = Generator | DCGANGenerator | OnnxGenerator
AnyCritic = Critic | OnnxCritic



def new_like(G: AnyGenerator) -> AnyGenerator:
    """A new generator of G's kind and config, freshly initialised; an ONNX generator is rebuilt from its graph
    (with the weights the graph was uploaded with: it has no initialisation of its own)."""
    if isinstance(G, OnnxGenerator):
        return OnnxGenerator(G.cfg, G.graph_bytes())
    return type(G)(G.cfg)  # type: ignore[arg-type]


def critic_like(D: AnyCritic, *, fresh: bool) -> AnyCritic:
    """The critic a run starts from: a copy of the source's critic D, or (``fresh``) a new critic of D's image shape with
    random weights. An uploaded ONNX critic has no initialisation of its own, so a fresh critic is then ours (the
    WGAN-GP critic of ``core/nets/gan.py``)."""
    if isinstance(D, OnnxCritic):
        if fresh:
            return Critic(CriticConfig(img_size=D.cfg.img_size, channels=D.cfg.channels, width=32))
        return OnnxCritic.from_state(D.cfg, D.state_dict())
    out = Critic(D.cfg)  # drawn even when D's weights follow: the random stream stays that of earlier versions
    if not fresh:
        out.load_state_dict(D.state_dict())
    return out


__all__ = [
    "critic_like",
    "AnyCritic",
    "OnnxCritic",
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
