// epc shim of <stddef.h> for NVRTC, which has no C library headers (size_t and ptrdiff_t are
// built into NVRTC).
#ifndef EPC_SHIM_STDDEF_H
#define EPC_SHIM_STDDEF_H
#ifndef NULL
#define NULL nullptr
#endif
#ifndef offsetof
#define offsetof(type, member) __builtin_offsetof(type, member)
#endif
#endif
