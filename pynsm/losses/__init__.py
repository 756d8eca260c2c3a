"""Self-supervised learning losses: the clustering family (MSN, PMSN, SwaV, DINO) and
the rest of the documented loss family (Barlow Twins, DCL, NT-Xent, VICReg, ...)."""

# --- clustering losses (MSN, PMSN, SwaV, DINO, Sinkhorn) ---
# --- end clustering losses ---

# --- contrastive / redundancy-reduction losses ---
# --- end contrastive / redundancy-reduction losses ---
