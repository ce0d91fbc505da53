# Every fastnn kernel of fastnn/_kernels/reference.py, one topic a file; each per-ISA module (_avx512, _avx2, _generic) includes this.
include "common.pxi"
include "gemm.pxi"
include "activations.pxi"
include "fused.pxi"
include "losses.pxi"
include "optim.pxi"
include "conv.pxi"
include "recurrent.pxi"
include "attention.pxi"
include "activations_more.pxi"   # issue 10: acts
include "normalization.pxi"
include "dropout_embedding.pxi"   # issue 10: acts
include "losses_extra.pxi"    # issue 10 (optim)
include "optim_extra.pxi"     # issue 10 (optim)
