// Schemas of the magnn_cpu operators; the CPU kernels are registered next to
// their implementations (edge_attention.cpp).
#include <torch/library.h>

TORCH_LIBRARY(magnn_cpu, m) {
  // Fused edge attention forward (SPEC §3). rowptr, col, perm: the dst-sorted
  // CSR; src, dst: the edge list in the caller's order. mode: "gt" |
  // "additive"; ebt: None | "edge" | "slot"; mantissa_bits < 0 skips the
  // statistics (their outputs are then empty). Returns node_out, edge_out, lse [N, 2, H] (the per-(node,
  // head) log-sum-exp in two parts, row max and log sum, that backward recomputes the softmax from), then
  // the RawStats fields of the edge_out tap: hist_abs, hist_ratio, row_ratio, row_max_abs,
  // nan_count, max_abs, argmax.
  m.def(
      "edge_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor e, Tensor rowptr, Tensor col, "
      "Tensor perm, Tensor src, Tensor dst, Tensor? bias, Tensor? ebt_k, Tensor? ebt_e, Tensor? ebt_v, "
      "str mode, str? ebt, float? clamp, int mantissa_bits) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor)");
  // Backward from lse: gradients of q, k, v, e (input dtype) and of bias,
  // ebt_k, ebt_e, ebt_v (accumulation dtype; empty when the input was None).
  // rev_rowptr, rev_col, rev_perm: the src-sorted CSR. A missing output
  // gradient counts as zero.
  m.def(
      "edge_attention_bwd(Tensor? grad_node, Tensor? grad_edge, Tensor q, Tensor k, Tensor v, "
      "Tensor e, Tensor lse, Tensor rowptr, Tensor col, Tensor perm, Tensor rev_rowptr, "
      "Tensor rev_col, Tensor rev_perm, Tensor? bias, Tensor? ebt_k, "
      "Tensor? ebt_e, Tensor? ebt_v, str mode, str? ebt, float? clamp) -> (Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor)");
}
