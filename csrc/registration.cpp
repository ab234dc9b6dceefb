// Schemas of the magnn_cpu operators, per the compiled-op contract in
// magnn/core/contract.py (FORWARD_ARGS / ForwardResult, BACKWARD_ARGS /
// BackwardResult): the Triton ops (magnn_triton::) take the same arguments in
// the same order with the same types. The CPU kernels are registered next to
// their implementations (edge_attention.cpp); the fake (meta) kernels and the
// autograd formula are registered from Python (magnn/backends/cpu.py) with
// torch.library.register_fake / register_autograd.
#include <torch/library.h>

TORCH_LIBRARY(magnn_cpu, m) {
  // Fused edge attention forward (SPEC §3). rowptr, col, perm: the dst-sorted
  // CSR; rev_rowptr, rev_col, rev_perm: the src-sorted CSR, only carried for
  // the backward (None when no input needs a gradient). mode: "gt" |
  // "additive"; ebt: "none" | "edge" | "slot"; mantissa_bits < 0 skips the
  // statistics (their outputs are then empty). sink [H], gate [N_dst, H] (accumulation dtype): the
  // learned sink logit, a softmax term of value 0, and the gate logit, node_out scaled by its sigmoid as it
  // is stored (SPEC §3 "Sink and gate"). dropout, seed: attention dropout
  // (SPEC §3; dropout 0 means none). k, v have N_src rows, q N_dst (bipartite). need_edge_out false:
  // edge_out is not written (an empty [0, H, D] comes back), the statistics are still reduced from its
  // rows, and additive mode skips its edge_out pass when there are none. Returns node_out, edge_out, lse
  // [N, 2, H] (per (node, head) the row max and the log sum that backward
  // recomputes the softmax from), then the RawStats fields of the edge_out tap:
  // hist_abs, hist_ratio, row_ratio, row_max_abs, nan_count, max_abs, argmax.
  m.def(
      "edge_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor e, Tensor rowptr, Tensor col, Tensor perm, "
      "Tensor? rev_rowptr, Tensor? rev_col, Tensor? rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
      "Tensor? ebt_v, Tensor? sink, Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, "
      "int mantissa_bits, bool need_edge_out=True) -> (Tensor, "
      "Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Backward from lse: gradients of q, k, v, e (input dtype) and of bias,
  // ebt_k, ebt_e, ebt_v, sink, gate (accumulation dtype; empty when the input was None).
  // A missing output gradient counts as zero; grad_lse's [:, 1, :] is the
  // gradient of each (node, head)'s log-sum-exp (the row max part carries none).
  m.def(
      "edge_attention_bwd(Tensor? grad_node, Tensor? grad_edge, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor e, Tensor lse, Tensor node_out, Tensor rowptr, Tensor col, Tensor perm, Tensor rev_rowptr, "
      "Tensor rev_col, Tensor rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, Tensor? ebt_v, Tensor? sink, "
      "Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The in-operator edge projection (contract.PROJ_FORWARD_ARGS / PROJ_BACKWARD_ARGS): the same ops with
  // e replaced by the raw edge features a [E, F] (q's dtype), the weight w_e [H*D, F] and the optional
  // bias b_e [H*D] (any float dtype; used in the accumulation dtype): e_ij = w_e a_ij + b_e is formed
  // per edge inside the kernels and never stored. The backward returns dq, dk, dv, da ([0, F] unless
  // need_grad_a), dw_e [H*D, F] and db_e (accumulation dtype; db_e empty without b_e), then dbias and
  // the EBT, sink and gate gradients, without any [E, H*D] tensor.
  m.def(
      "edge_attention_proj_fwd(Tensor q, Tensor k, Tensor v, Tensor a, Tensor w_e, Tensor? b_e, Tensor rowptr, "
      "Tensor col, Tensor perm, "
      "Tensor? rev_rowptr, Tensor? rev_col, Tensor? rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, "
      "Tensor? ebt_v, Tensor? sink, Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, "
      "int mantissa_bits, bool need_edge_out=True) -> (Tensor, "
      "Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "edge_attention_proj_bwd(Tensor? grad_node, Tensor? grad_edge, Tensor? grad_lse, Tensor q, Tensor k, "
      "Tensor v, Tensor a, Tensor w_e, Tensor? b_e, Tensor lse, Tensor node_out, Tensor rowptr, Tensor col, "
      "Tensor perm, Tensor rev_rowptr, "
      "Tensor rev_col, Tensor rev_perm, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, Tensor? ebt_v, Tensor? sink, "
      "Tensor? gate, str mode, str ebt, float? clamp, float dropout, int seed, bool need_grad_a) -> (Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Statistics of a materialised tap rows [R, C] (not part of the compiled-op
  // contract; CPU only): the RawStats fields hist_abs, hist_ratio, row_ratio,
  // row_max_abs, nan_count, max_abs, argmax, as magnn.core.binning.reduce_rows.
  m.def(
      "reduce_rows(Tensor rows, int mantissa_bits) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // What magnn.stats.EdgeStats.add derives from a call's per-row ratios (float32 [R], CPU, serial):
  // the histogram of the non-NaN ratios, their number and max (-inf if none), the massive-row mask and count.
  m.def(
      "summarize_ratios(Tensor row_ratio, int mantissa_bits, float threshold, Tensor? row_max_abs, float? min_abs) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
