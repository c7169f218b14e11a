"""madbench: a reproducible benchmark of score-based generative models on manifolds.

Ambient denoising score matching (DSM), Riemannian score matching (RSGM) and manifold-aware
denoising score matching (MAD), compared on SO(3), spheres and discrete sets with exact scores.
"""

__version__ = "0.1.0"
