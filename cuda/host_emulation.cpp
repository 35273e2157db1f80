// Translation unit for the host emulation of the GPU drivers (tests only).
#include "host_emulation.h"
#include "kernels.cu"

EXODUS_EXPORT_EMULATION(exodus_lif_forward)
EXODUS_EXPORT_EMULATION(exodus_lif_backward)
EXODUS_EXPORT_EMULATION(exodus_leaky_forward)
EXODUS_EXPORT_EMULATION(exodus_leaky_backward)
EXODUS_EXPORT_EMULATION(exodus_adaptive_forward)
EXODUS_EXPORT_EMULATION(exodus_adaptive_backward)
EXODUS_EXPORT_BLOCK_EMULATION(exodus_adaptive_recurrent_forward)
