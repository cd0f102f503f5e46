"""A torch.compile backend for tests that count how often a decoding step is captured."""

import torch


class CountingBackend:
    """Records each graph that torch.compile captures and runs it op by op.

    Made with dynamo's caches reset: otherwise the compilations of earlier tests in the same process count against
    dynamo's recompile limit, past which it silently runs the step eagerly and captures nothing.
    """

    def __init__(self):
        torch._dynamo.reset()
        self.graphs = []

    def __call__(self, graph_module, example_inputs):
        self.graphs.append(graph_module)
        return graph_module.forward
