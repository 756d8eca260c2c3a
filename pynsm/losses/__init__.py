"""Self-supervised learning losses: the clustering family (MSN, PMSN, SwaV, DINO,
iBOT) and the rest of the lightly.loss family (Barlow Twins, DCL, NT-Xent, VICReg,
KoLeo, MMCR, W-MSE, EMP-SSL, ...)."""

from pynsm.losses.barlow_twins import BarlowTwinsLoss, barlow_twins_loss
from pynsm.losses.co2 import CO2Regularizer
from pynsm.losses.dcl import DCLLoss, DCLWLoss, dcl_loss, negative_mises_fisher_weights
from pynsm.losses.dino import DINOLoss
from pynsm.losses.emp_ssl import EMPSSLLoss, emp_ssl_loss, total_coding_rate
from pynsm.losses.hypersphere import (
    HypersphereLoss,
    alignment_loss,
    hypersphere_loss,
    uniformity_loss,
)
from pynsm.losses.ibot_patch import IBOTPatchLoss, ibot_patch_loss
from pynsm.losses.koleo import KoLeoLoss, koleo_loss
from pynsm.losses.memory_bank import MemoryBankModule
from pynsm.losses.mmcr import MMCRLoss, mmcr_loss
from pynsm.losses.msn import (
    MSNLoss,
    power_law_distribution,
    prototype_probabilities,
    sharpen,
)
from pynsm.losses.negative_cosine_similarity import (
    NegativeCosineSimilarity,
    negative_cosine_similarity,
)
from pynsm.losses.ntx_ent import NTXentLoss, ntxent_loss
from pynsm.losses.pmsn import PMSNCustomLoss, PMSNLoss
from pynsm.losses.sinkhorn import sinkhorn_log, sinkhorn_msn, sinkhorn_swav
from pynsm.losses.swav import SwaVLoss
from pynsm.losses.sym_neg_cos_sim import SymNegCosineSimilarityLoss
from pynsm.losses.tico import TiCoLoss
from pynsm.losses.vicreg import (
    VICRegLoss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)
from pynsm.losses.vicregl import VICRegLLoss
from pynsm.losses.wmse import Whitening2d, WMSELoss, norm_mse_loss, whitening_matrix

__all__ = [
    "BarlowTwinsLoss",
    "CO2Regularizer",
    "DCLLoss",
    "DCLWLoss",
    "DINOLoss",
    "EMPSSLLoss",
    "HypersphereLoss",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "MMCRLoss",
    "MSNLoss",
    "MemoryBankModule",
    "NTXentLoss",
    "NegativeCosineSimilarity",
    "PMSNCustomLoss",
    "PMSNLoss",
    "SwaVLoss",
    "SymNegCosineSimilarityLoss",
    "TiCoLoss",
    "VICRegLLoss",
    "VICRegLoss",
    "WMSELoss",
    "Whitening2d",
    "alignment_loss",
    "barlow_twins_loss",
    "covariance_loss",
    "dcl_loss",
    "emp_ssl_loss",
    "hypersphere_loss",
    "ibot_patch_loss",
    "invariance_loss",
    "koleo_loss",
    "mmcr_loss",
    "negative_cosine_similarity",
    "negative_mises_fisher_weights",
    "norm_mse_loss",
    "ntxent_loss",
    "power_law_distribution",
    "prototype_probabilities",
    "sharpen",
    "sinkhorn_log",
    "sinkhorn_msn",
    "sinkhorn_swav",
    "total_coding_rate",
    "uniformity_loss",
    "variance_loss",
    "vicreg_loss",
    "whitening_matrix",
]
