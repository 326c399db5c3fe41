// epc shim of libcu++'s <cuda/atomic> for NVRTC (which ships no CCCL headers), included by NCCL's
// nccl_device/utility.h. It provides the part NCCL's headers name: the memory orders, the thread
// scopes, cuda::atomic_thread_fence and cuda::atomic_ref's load and store, each as the PTX that
// libcu++ emits for sm_70 and later. Anything else is left out on purpose: a use of it fails to
// compile instead of behaving differently from libcu++.
#ifndef EPC_SHIM_CUDA_ATOMIC
#define EPC_SHIM_CUDA_ATOMIC

namespace cuda {

enum memory_order {
  memory_order_relaxed,
  memory_order_consume,
  memory_order_acquire,
  memory_order_release,
  memory_order_acq_rel,
  memory_order_seq_cst
};

enum thread_scope {
  thread_scope_system = 0,
  thread_scope_device = 1,
  thread_scope_block = 2,
  thread_scope_thread = 3
};

namespace epc_shim {

// `fence.<sem>.<scope>`, or only a compiler barrier for a single thread.
template <thread_scope Scope>
__device__ __forceinline__ void fence(bool sc) {
  if constexpr (Scope == thread_scope_thread) {
    asm volatile("" ::: "memory");
  } else if constexpr (Scope == thread_scope_block) {
    if (sc) asm volatile("fence.sc.cta;" ::: "memory");
    else asm volatile("fence.acq_rel.cta;" ::: "memory");
  } else if constexpr (Scope == thread_scope_device) {
    if (sc) asm volatile("fence.sc.gpu;" ::: "memory");
    else asm volatile("fence.acq_rel.gpu;" ::: "memory");
  } else {
    if (sc) asm volatile("fence.sc.sys;" ::: "memory");
    else asm volatile("fence.acq_rel.sys;" ::: "memory");
  }
}

// Loads and stores of 32 and 64 bits at one scope: ld.<relaxed|acquire>.<scope> and
// st.<relaxed|release>.<scope>.
template <thread_scope Scope> struct access;

#define EPC_SHIM_ACCESS(SCOPE_ENUM, SCOPE)                                                      \
  template <> struct access<SCOPE_ENUM> {                                                       \
    static __device__ __forceinline__ unsigned int load(const unsigned int* p, bool acquire) {  \
      unsigned int v;                                                                           \
      if (acquire)                                                                              \
        asm volatile("ld.acquire." SCOPE ".b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");       \
      else                                                                                      \
        asm volatile("ld.relaxed." SCOPE ".b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");       \
      return v;                                                                                 \
    }                                                                                           \
    static __device__ __forceinline__ unsigned long long load(const unsigned long long* p,      \
                                                              bool acquire) {                   \
      unsigned long long v;                                                                     \
      if (acquire)                                                                              \
        asm volatile("ld.acquire." SCOPE ".b64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");       \
      else                                                                                      \
        asm volatile("ld.relaxed." SCOPE ".b64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");       \
      return v;                                                                                 \
    }                                                                                           \
    static __device__ __forceinline__ void store(unsigned int* p, unsigned int v, bool release) { \
      if (release)                                                                              \
        asm volatile("st.release." SCOPE ".b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");         \
      else                                                                                      \
        asm volatile("st.relaxed." SCOPE ".b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");         \
    }                                                                                           \
    static __device__ __forceinline__ void store(unsigned long long* p, unsigned long long v,   \
                                                 bool release) {                                \
      if (release)                                                                              \
        asm volatile("st.release." SCOPE ".b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");         \
      else                                                                                      \
        asm volatile("st.relaxed." SCOPE ".b64 [%0], %1;" ::"l"(p), "l"(v) : "memory");         \
    }                                                                                           \
  };
EPC_SHIM_ACCESS(thread_scope_block, "cta")
EPC_SHIM_ACCESS(thread_scope_device, "gpu")
EPC_SHIM_ACCESS(thread_scope_system, "sys")
#undef EPC_SHIM_ACCESS

// A single thread's own accesses need no ordering with others.
template <> struct access<thread_scope_thread> {
  template <class U>
  static __device__ __forceinline__ U load(const U* p, bool) {
    return *(const volatile U*)p;
  }
  template <class U>
  static __device__ __forceinline__ void store(U* p, U v, bool) {
    *(volatile U*)p = v;
  }
};

template <int Bytes> struct bits;
template <> struct bits<4> { typedef unsigned int type; };
template <> struct bits<8> { typedef unsigned long long type; };

}  // namespace epc_shim

// Orders this thread's memory operations as libcu++ does: nothing for relaxed, fence.sc for
// seq_cst, fence.acq_rel otherwise.
__device__ __forceinline__ void atomic_thread_fence(memory_order order,
                                                    thread_scope scope = thread_scope_system) {
  if (order == memory_order_relaxed) return;
  bool sc = order == memory_order_seq_cst;
  switch (scope) {
    case thread_scope_thread: epc_shim::fence<thread_scope_thread>(sc); break;
    case thread_scope_block: epc_shim::fence<thread_scope_block>(sc); break;
    case thread_scope_device: epc_shim::fence<thread_scope_device>(sc); break;
    default: epc_shim::fence<thread_scope_system>(sc); break;
  }
}

// Atomic loads and stores of a 4- or 8-byte object that is not itself an atomic type.
template <class T, thread_scope Scope = thread_scope_system>
struct atomic_ref {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8,
                "epc's cuda/atomic shim: 4- or 8-byte types only");
  typedef typename epc_shim::bits<sizeof(T)>::type Bits;
  union Pun {
    T value;
    Bits bits;
    __device__ Pun() {}
  };

  T* ptr;

  __host__ __device__ explicit atomic_ref(T& ref) : ptr(&ref) {}

  __device__ T load(memory_order order = memory_order_seq_cst) const {
    if (order == memory_order_seq_cst) epc_shim::fence<Scope>(true);
    bool acquire = order != memory_order_relaxed && order != memory_order_release;
    Pun pun;
    pun.bits = epc_shim::access<Scope>::load(reinterpret_cast<const Bits*>(ptr), acquire);
    return pun.value;
  }

  __device__ void store(T value, memory_order order = memory_order_seq_cst) const {
    if (order == memory_order_seq_cst) epc_shim::fence<Scope>(true);
    bool release = order == memory_order_release || order == memory_order_acq_rel;
    Pun pun;
    pun.value = value;
    epc_shim::access<Scope>::store(reinterpret_cast<Bits*>(ptr), pun.bits, release);
  }
};

}  // namespace cuda

#endif
