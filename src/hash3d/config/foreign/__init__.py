"""Config files of other projects, read as they are: threestudio, the original Hash3D's three forks, DreamGaussian
and GaussianDreamer.

    data, report = read_experiment(resolved_tree, ExperimentConfig)   # threestudio layout (or ours: unchanged)
    report.raise_refusals()                                          # result-changing keys we do not implement
    print(report.no_effect_line())                                   # "accepted, no effect here: ..."
    print(report.explain())                                          # `launch.py --explain`

`type_names.py` holds the one table of upstream `*_type` names; `threestudio.py` the key rules by block;
`systems.py` what one upstream system hard-codes; `dreamgaussian.py` DreamGaussian's flat options.
"""

from .dreamgaussian import read_dreamgaussian
from .report import Reading, Report
from .type_names import TYPE_NAMES, TypeName, upstream_type
from .walk import read_experiment

__all__ = ["TYPE_NAMES", "Reading", "Report", "TypeName", "read_dreamgaussian", "read_experiment", "upstream_type"]
