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

typedef struct {
    int n_layers;
    int n_inputs;
    int max_width;                /* widest activation row (padded), for scratch sizing */
    nvc_layer layers[NVC_MAX_LAYERS];
} nvc_net;

/* Network kernels: `in` is n_pad x n_in (n_pad = n rounded up to NVC_VOX_BLOCK, extra rows
 * zero), out receives n x 2 int64. scratch holds 2 * n_pad * max_width doubles. */
typedef void (*nvc_forward_fn)(const nvc_net *net, const double *in, int n, int64_t *out, double *scratch);

enum { NVC_KERNEL_SCALAR = 0, NVC_KERNEL_AVX2 = 1, NVC_KERNEL_NEON = 2, NVC_KERNEL_AVX512 = 3 };
#define NVC_N_KERNELS 4
int nvc_kernel_available(int kernel);
nvc_forward_fn nvc_kernel_fn(int kernel);
const char *nvc_kernel_name(int kernel);

#endif
