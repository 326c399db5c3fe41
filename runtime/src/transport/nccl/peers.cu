// The `nccl` transport's device helpers, compiled by NVRTC against the NCCL headers that match
// the loaded libnccl (on -I) and epc's shims of the system and CUDA headers (in memory).
//
// epc_nccl_probe: the sizes of NCCL's host/device structs as this NCCL version lays them out, so
//   that no layout is hard-coded on the host. Output, in 64-bit words (little-endian):
//     [0] EPC_NCCL_PROBE_MAGIC      [1] sizeof(ncclDevComm)      [2] alignof(ncclDevComm)
//     [3] sizeof(ncclDevCommRequirements)  [4] alignof(ncclDevCommRequirements)
//     [5] 1 if the headers define NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER (2.29+), else 0
//     [6] the headers' version, major*10000 + minor*100 + patch   [7] 0
//   then, from byte 64, the bytes of a requirements struct set up for default requirements
//   (NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER, or all zero where the headers have none), when it
//   fits in `capacity` bytes in all.
//
// epc_nccl_peer_table: the peer table of one rank's symmetric window: peers[r] = the address,
//   as seen from this GPU, of world rank r's window (ncclGetLsaPointer with r's LSA rank), or 0
//   where r is not in this rank's LSA team. Status, in 64-bit words:
//     [0] EPC_NCCL_PEERS_MAGIC  [1] world rank  [2] world size  [3] LSA rank  [4] LSA size
//     [5] how many of the `ranks` world ranks are not LSA peers  [6] the first of them, or -1
//     [7] `ranks` as passed
// Both run as one thread: they are set-up steps, not hot paths.

// NVRTC compiles device code only: it rejects declarations marked __host__ ("not allowed in JIT
// mode"), which is how NCCL's headers declare its host API (ncclDevCommCreate,
// ncclTeamWorld(comm), ...). With __host__ empty those become plain declarations, which
// -default-device turns into device declarations that are never defined or called; NCCL's
// host-and-device inline functions become device functions.
#ifdef __host__
#undef __host__
#endif
#define __host__

#include <nccl_device/utility.h>

// NCCL's nccl::utility::loadConst picks a load width by alignof(T) with a plain `if` chain, so
// every branch is instantiated, including unions of zero-length arrays (sizeof(T)/16 for an
// 8-byte T), which nvcc's GNU mode accepts and NVRTC rejects. The same loads with `if constexpr`
// take its place in the headers included below.
namespace nccl {
namespace utility {
template <typename T>
NCCL_DEVICE_INLINE T epc_load_const(T const* p) {
  if constexpr (alignof(T) == 1) {
    union { uint8_t part[sizeof(T)]; T ret; };
    for (int i = 0; i < (int)sizeof(T); i++) part[i] = __ldg((uint8_t const*)p + i);
    return ret;
  } else if constexpr (alignof(T) == 2) {
    union { uint16_t part[sizeof(T) / 2]; T ret; };
    for (int i = 0; i < (int)sizeof(T) / 2; i++) part[i] = __ldg((uint16_t const*)p + i);
    return ret;
  } else if constexpr (alignof(T) == 4) {
    union { uint32_t part[sizeof(T) / 4]; T ret; };
    for (int i = 0; i < (int)sizeof(T) / 4; i++) part[i] = __ldg((uint32_t const*)p + i);
    return ret;
  } else if constexpr (alignof(T) == 8) {
    union { uint64_t part[sizeof(T) / 8]; T ret; };
    for (int i = 0; i < (int)sizeof(T) / 8; i++) part[i] = __ldg((uint64_t const*)p + i);
    return ret;
  } else {
    union { ulonglong2 part[sizeof(T) / 16]; T ret; };
    for (int i = 0; i < (int)sizeof(T) / 16; i++) part[i] = __ldg((ulonglong2 const*)p + i);
    return ret;
  }
}
}  // namespace utility
}  // namespace nccl
#define loadConst epc_load_const

// Only the window, team and communicator parts of NCCL's device API (no barriers, no GIN).
#include <nccl_device/impl/comm__funcs.h>
#include <nccl_device/impl/core__funcs.h>
#include <nccl_device/impl/ptr__funcs.h>

#define EPC_NCCL_PROBE_MAGIC 0x45504350524f4245ull  // "EPCPROBE"
#define EPC_NCCL_PEERS_MAGIC 0x4550435045455253ull  // "EPCPEERS"
#define EPC_NCCL_PROBE_HEADER_BYTES 64

extern "C" __global__ void epc_nccl_probe(unsigned long long* out, unsigned long long capacity) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  out[0] = EPC_NCCL_PROBE_MAGIC;
  out[1] = sizeof(ncclDevComm);
  out[2] = alignof(ncclDevComm);
  out[3] = sizeof(ncclDevCommRequirements);
  out[4] = alignof(ncclDevCommRequirements);
  out[6] = NCCL_MAJOR * 10000ull + NCCL_MINOR * 100ull + NCCL_PATCH;
  out[7] = 0;
  union Requirements {
    ncclDevCommRequirements reqs;
    unsigned char bytes[sizeof(ncclDevCommRequirements)];
    __device__ Requirements() {
      for (unsigned i = 0; i < sizeof(bytes); i++) bytes[i] = 0;
    }
  } defaults;
#ifdef NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER
  out[5] = 1;
  ncclDevCommRequirements initialized = NCCL_DEV_COMM_REQUIREMENTS_INITIALIZER;
  defaults.reqs = initialized;
#else
  out[5] = 0;
#endif
  if (EPC_NCCL_PROBE_HEADER_BYTES + sizeof(ncclDevCommRequirements) <= capacity) {
    unsigned char* dst = reinterpret_cast<unsigned char*>(out) + EPC_NCCL_PROBE_HEADER_BYTES;
    for (unsigned i = 0; i < sizeof(ncclDevCommRequirements); i++) dst[i] = defaults.bytes[i];
  }
}

extern "C" __global__ void epc_nccl_peer_table(const ncclDevComm* comm, ncclWindow_t window,
                                               int ranks, unsigned long long* peers,
                                               long long* status) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  ncclTeam world = ncclTeamWorld(*comm);
  ncclTeam lsa = ncclTeamLsa(*comm);
  long long missing = 0, first_missing = -1;
  for (int r = 0; r < ranks; r++) {
    if (r < world.nRanks && ncclTeamRankIsMember(lsa, world, r)) {
      int peer = ncclTeamRankToTeam(lsa, world, r);
      peers[r] = reinterpret_cast<unsigned long long>(ncclGetLsaPointer(window, 0, peer));
    } else {
      peers[r] = 0;
      if (missing++ == 0) first_missing = r;
    }
  }
  status[0] = (long long)EPC_NCCL_PEERS_MAGIC;
  status[1] = world.rank;
  status[2] = world.nRanks;
  status[3] = lsa.rank;
  status[4] = lsa.nRanks;
  status[5] = missing;
  status[6] = first_missing;
  status[7] = ranks;
}
