// epc shim of <stdbool.h> for NVRTC: in C++ bool, true and false are keywords.
#ifndef EPC_SHIM_STDBOOL_H
#define EPC_SHIM_STDBOOL_H
#define __bool_true_false_are_defined 1
#endif
