"""Walking a jaxpr with everything it nests: loop bodies, remat, custom_vjp and pjit'd calls."""


def equations(jaxpr):
    """Every equation of `jaxpr` (a Jaxpr or ClosedJaxpr) and of the jaxprs its equations hold, depth first."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in subjaxprs(eqn.params):
            yield from equations(sub)


def subjaxprs(params):
    """The jaxprs an equation's params hold (loop bodies, called functions)."""
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "jaxpr") and hasattr(v, "consts"):  # ClosedJaxpr
                yield v.jaxpr
            elif hasattr(v, "eqns"):
                yield v
