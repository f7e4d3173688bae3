"""Step types of batch jobs; importing this package registers all of them."""
from hovcaffe.jobs.steps import commands, train  # noqa: F401  (registration side effect)
from hovcaffe.jobs.steps.base import (Plan, StepContext, StepType, get_step_type, list_step_types,
                                      register_step)

__all__ = ["Plan", "StepContext", "StepType", "get_step_type", "list_step_types", "register_step"]
