"""resexp: the degradation study of He, Zhang, Ren and Sun 2015 (arXiv 1512.03385), section 4.2.

Plain and residual CIFAR-10 networks of 6n+2 layers, trained with the paper's recipe, and the
follow-up measurements of why the residual ones train better.
"""

__version__ = "0.1.0"
