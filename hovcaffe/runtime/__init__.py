"""How a built net runs on its device: numeric precision (exact fp32, opt-in TF32 / AMP) and the
measured fast path (`--fast auto|on|off`). Nothing here changes what a net computes beyond the
documented tolerances; the layers and the net stay the one definition of the numbers."""
