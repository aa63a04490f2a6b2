"""Skip the all-zero part of a gradient penalty's double backward in a plain (unfused) D.

The penalty's backward differentiates the input gradient g = dD/dx a second time. For a
piecewise-linear op (LeakyReLU, ReLU, Hardtanh, max and average pooling) torch's formula for
the second derivative with respect to the op's input is `zeros_like`: a zero tensor that the
engine then sends back through the whole forward graph of D(x_hat), where every convolution and
linear layer runs its backward (input and weight gradients) on zeros. In a conv critic that is
two of the ~12 convolution passes of a WGAN-GP D step, all multiplying zeros.

prune(out, g, x_hat) finds those edges in g's graph and drops the zero (a node post-hook returns
None for it), so the engine skips the forward graph they lead to. Parameters whose only penalty
gradient was that zero (the biases: x + b does not enter g's formula) still get an exact zero
gradient, as torch would give them, from the penalty's own node (gk.ops.norm_penalty's
_EagerNormPenalty, which gradient_penalty hands them): an optimizer step after a penalty-only
backward (lazy R1) then treats them the same, and DDP's reducer sees every parameter. The
weights get their real second-order gradients from g's own graph, as before. Only ops whose
zero is verified in tests/test_zero_second_order.py are pruned.
"""

from __future__ import annotations

import torch

# Double-backward nodes whose gradient to input 1 (the op's forward input or result) is
# zeros_like in torch's derivatives: the second derivative of a piecewise-linear op.
ZERO_INPUT_GRAD_NODES = frozenset({
    "LeakyReluBackwardBackward0", "ThresholdBackwardBackward0", "HardtanhBackwardBackward0",
    "AvgPool2DBackwardBackward0", "MaxPool2DWithIndicesBackwardBackward0",
})


# Forward-graph nodes that pass a defined gradient on to their one input unchanged in kind: a
# leaf behind a chain of these, reached from g's own graph, gets a real gradient from it (a
# Linear's weight sits behind TBackward0, an AMP-cast weight behind ToCopyBackward0).
_PASS_THROUGH_NODES = frozenset({
    "TBackward0", "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0", "PermuteBackward0",
    "TransposeBackward0", "TransposeBackward1", "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2",
    "UnsqueezeBackward0", "ExpandBackward0", "CloneBackward0", "ToCopyBackward0",
})


def _is_leaf(node) -> bool:
    # Not hasattr(node, "variable"): on every other node that raises and catches an AttributeError.
    return type(node).__name__ == "AccumulateGrad"


def _fed_leaf(node, forward: dict):
    """The leaf a defined gradient into node reaches for sure (through pass-through forward
    nodes), or None."""
    while node is not None and not _is_leaf(node):
        nexts = forward.get(node)
        if nexts is None or type(node).__name__ not in _PASS_THROUGH_NODES or len(nexts) != 1:
            return None
        node = nexts[0][0]
    return None if node is None else node.variable


def _drop_input_grad(grad_inputs, grad_outputs):
    return (grad_inputs[0], None)


def _graph(roots, known: dict = None) -> dict:
    """{node: node.next_functions} for every node reachable from the roots that is not in
    `known`; nodes of `known` are not expanded (a graph from _graph is closed: all they reach
    is in it already). Each node's next_functions is read once: every read builds new Python
    objects for the node's edges, which is most of what a walk costs."""
    known = known or {}
    out, stack = {}, [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in out or node in known:
            continue
        nexts = out[node] = node.next_functions
        stack.extend(n for n, _ in nexts if n is not None)
    return out


def prune(out: torch.Tensor, g: torch.Tensor, x_hat: torch.Tensor) -> list:
    """Drop the zero second-order edges of g's graph into D(x_hat)'s forward graph (out is D's
    output). Returns the parameters that lose their only (zero) gradient with them: pass them
    to the penalty's node (norm_penalty_resolved's zero_grad_to). [] when nothing was pruned."""
    if out.grad_fn is None or g.grad_fn is None or torch.compiler.is_compiling():
        return []
    forward = _graph([out.grad_fn])
    targets = []  # the forward-graph nodes the dropped zeros went to
    fed = set()  # leaves that g's own graph (the double backward) reaches directly
    for node, nexts in _graph([g.grad_fn], known=forward).items():  # g's own nodes only
        zero_edge = type(node).__name__ in ZERO_INPUT_GRAD_NODES and len(nexts) == 2
        for i, (next_fn, _) in enumerate(nexts):
            leaf = None if zero_edge and i == 1 else _fed_leaf(next_fn, forward)
            if leaf is not None:
                fed.add(id(leaf))
        if zero_edge and nexts[1][0] is not None and nexts[1][0] in forward:
            node.register_hook(_drop_input_grad)
            targets.append(nexts[1][0])
    if not targets:
        return []
    # Exactly the leaves torch's zeros reached: those below the pruned edges (a bias above
    # every activation, such as the output layer's, got no gradient from the penalty in torch
    # either), less those g's graph feeds with their real gradient anyway.
    reached, stack = {}, list(targets)  # a dict: an ordered set, so the order is the walk's
    while stack:  # within the forward graph, whose edges were read once above
        node = stack.pop()
        if node not in reached:
            reached[node] = None
            stack.extend(n for n, _ in forward[node] if n is not None)
    leaves = [n.variable for n in reached if _is_leaf(n)]
    return [v for v in leaves if id(v) not in fed and v is not x_hat and v.requires_grad]
