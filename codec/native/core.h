/* NVC native coding core: shared declarations.
 *
 * Everything here reproduces, integer for integer, the reference Python path
 * (codec/context.py, codec/context_paper.py, codec/network.py, codec/entropy.py,
 * codec/schedule.py); docs/codec.md ("Native core") states the exactness argument.
 * Build flags: -ffp-contract=off and no fast-math (features use IEEE float32 division and
 * multiplication; the network's float64 sums are exact integers whatever the order).
 */
#ifndef NVC_CORE_H
#define NVC_CORE_H

#include <stddef.h>
#include <stdint.h>

#define NVC_MAX_LAYERS 9          /* up to 8 hidden layers + the output layer */
#define NVC_N_TOKENS 127
#define NVC_N_CLASSES 72
#define NVC_N_SHAPES 216          /* sides * classes */
#define NVC_N_LEVELS 8
#define NVC_N_KEYS 1728
#define NVC_OUT_BLOCK 8           /* output channels per kernel block (weights padded to it) */
#define NVC_VOX_BLOCK 8           /* activations are padded to a multiple of this many voxels */
#define NVC_CHUNK 64              /* voxels per network call: activations stay in L1/L2 */

typedef struct {
    int n_in;                     /* real inputs */
    int n_out;                    /* real outputs */
    int n_out_pad;                /* n_out rounded up to NVC_OUT_BLOCK */
    const double *wt;             /* n_in x n_out_pad, weights transposed, zero padded */
    const double *bias;           /* n_out_pad */
    const double *scale;          /* n_out_pad: 2^-shift (1 on padding) */
} nvc_layer;

typedef struct nvc_inet nvc_inet;  /* the network as 16-bit integers (core_net_int.c) */

typedef struct {
    int n_layers;
    int n_inputs;
    int max_width;                /* widest activation row (padded), for scratch sizing */
    nvc_layer layers[NVC_MAX_LAYERS];
    nvc_inet *inet;               /* integer-kernel form, or NULL when the net does not qualify */
} nvc_net;

/* Network kernels: `in` is n_pad x n_in (n_pad = n rounded up to NVC_VOX_BLOCK, extra rows
 * zero), out receives n x 2 int64. scratch holds 2 * n_pad * max_width doubles. */
typedef void (*nvc_forward_fn)(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch);

enum { NVC_KERNEL_SCALAR = 0, NVC_KERNEL_AVX2 = 1, NVC_KERNEL_NEON = 2, NVC_KERNEL_AVX512 = 3, NVC_KERNEL_VNNI = 4 };
#define NVC_N_KERNELS 5
int nvc_kernel_available(int kernel);
nvc_forward_fn nvc_kernel_fn(int kernel);
const char *nvc_kernel_name(int kernel);

/* Integer kernels (core_net_int.c): 16-bit weights and activations, int32 dot products.
 * nvc_inet_prepare builds net->inet when every int32 partial sum provably fits (else leaves
 * it NULL: the integer kernels then run their float64 twin); -1 only when out of memory. */
int nvc_inet_prepare(nvc_net *net);
void nvc_inet_free(nvc_net *net);
/* Doubles of scratch any kernel needs for n_pad voxels (the float kernels need less). */
size_t nvc_scratch_doubles(const nvc_net *net, int n_pad);
int nvc_vnni_available(void);
/* Input pairs of the integer form (0 when there is none); the integer kernel on inputs that
 * are already int32 pairs xp[p * vb + j] (vb = n rounded up to 16; scratch as above). */
int nvc_inet_pairs(const nvc_net *net);
void nvc_forward_vnni_pairs(const nvc_net *net, const int32_t *xp, int n, int64_t *out, double *scratch);
void nvc_forward_vnni(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch);
/* the float64 AVX-512 kernel (core_net.c), the integer kernel's fallback */
void nvc_forward_avx512(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch);

#endif
