"""Networks: generators, critics, miners and the metric classifier (one frozen config dataclass each)."""

from dataclasses import replace

from core.formats import GraphCritic, GraphGenerator, OnnxCritic, OnnxGenerator, Pt2Critic, Pt2Generator
from core.nets.classifier import Classifier, ClassifierConfig
from core.nets.dcgan import DCGANGenerator, DCGANGeneratorConfig
from core.nets.gan import Critic, CriticConfig, Generator, GeneratorConfig
from core.nets.miner import ClassEmbeddingMiner, JointMiner, JointMinerConfig, Miner, MinerConfig, generate

GENERATORS = (Generator, DCGANGenerator, OnnxGenerator, Pt2Generator)  # what may serve as a source's G
AnyGenerator = Generator | DCGANGenerator | OnnxGenerator | Pt2Generator
AnyCritic = Critic | OnnxCritic | Pt2Critic



def new_like(G: AnyGenerator) -> AnyGenerator:
    """A new generator of G's kind and config, freshly initialised; a generator read from a graph file (ONNX, .pt2)
    is rebuilt from it (with the weights it was uploaded with: it has no initialisation of its own)."""
    if isinstance(G, GraphGenerator):
        return type(G)(G.cfg, G.graph_bytes())  # type: ignore[arg-type]
    return type(G)(G.cfg)  # type: ignore[arg-type]


def critic_like(D: AnyCritic, *, fresh: bool, patch: int = 0) -> AnyCritic:
    """The critic a run starts from: a copy of the source's critic D, or (``fresh``) a new critic of D's image shape with
    random weights, a patch critic of a ``patch`` x ``patch`` map when ``patch`` > 0 (Eq. PATCH, core/nets/gan.py). An
    uploaded graph critic (ONNX, .pt2) has no initialisation of its own, so a fresh critic is then ours (the WGAN-GP
    critic of ``core/nets/gan.py``)."""
    if patch and not fresh:
        raise ValueError("a patch critic starts fresh: a pretrained critic scores whole images")
    if isinstance(D, GraphCritic):
        if fresh:
            return Critic(CriticConfig(img_size=D.cfg.img_size, channels=D.cfg.channels, width=32, patch=patch))
        return type(D).from_state(D.cfg, D.state_dict())  # type: ignore[no-any-return]
    out = Critic(replace(D.cfg, patch=patch) if patch else D.cfg)  # drawn even when D's weights follow: the random stream stays
    if not fresh:
        out.load_state_dict(D.state_dict())
    return out


__all__ = [
    "critic_like",
    "AnyCritic",
    "OnnxCritic",
    "GraphCritic",
    "GraphGenerator",
    "Pt2Critic",
    "Pt2Generator",
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
