"""magnn.core.errors: one hierarchy, importable where the classes used to live, with the
built-in mix-ins that `except ValueError` / `except FileNotFoundError` callers rely on."""
import pytest
import torch

from magnn.core import errors
from magnn.core.errors import (ArgumentError, ArgumentTypeError, BackendSettingError, CorruptDataError,
                               DoubleBackwardError, LayerInputError, MagnnError, UntrustedFileError,
                               MissingDataError, MissingFileError, NothingToCollect, RunFailed, UserError)


def test_every_error_is_a_magnn_error_with_its_builtin_mixin():
    for cls in (UserError, RunFailed, MissingFileError, MissingDataError, CorruptDataError, NothingToCollect,
                LayerInputError, ArgumentError, ArgumentTypeError, DoubleBackwardError, UntrustedFileError,
                BackendSettingError):
        assert issubclass(cls, MagnnError), cls
    for cls in (CorruptDataError, NothingToCollect, LayerInputError, ArgumentError, BackendSettingError):
        assert issubclass(cls, ValueError), cls
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingDataError, FileNotFoundError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(DoubleBackwardError, RuntimeError)
    assert issubclass(UntrustedFileError, CorruptDataError) and issubclass(BackendSettingError, UserError)
    assert not issubclass(ArgumentError, UserError)  # a library caller's mistake, not a CLI option
    assert (UserError.exit_code, RunFailed.exit_code) == (2, 1)


def test_errors_stay_importable_from_the_modules_that_raise_them():
    from magnn.data import CorruptDataError as data_corrupt, MissingDataError as data_missing
    from magnn.layers import LayerInputError as layer_error
    from magnn.core.contract import DoubleBackwardError as contract_error
    from magnn.data._files import UntrustedFileError as files_error
    from magnn.functional import BackendSettingError as functional_error
    from magnn.stats import NothingToCollect as stats_error

    assert (data_corrupt, data_missing, layer_error, stats_error, contract_error) == (
        errors.CorruptDataError, errors.MissingDataError, errors.LayerInputError, errors.NothingToCollect,
        errors.DoubleBackwardError)
    assert (files_error, functional_error) == (errors.UntrustedFileError, errors.BackendSettingError)


def test_operator_checks_raise_the_argument_errors_and_say_what_to_pass():
    from magnn.core.graph import Graph

    with pytest.raises(ArgumentTypeError, match=r"edge_index.long\(\)"):
        Graph(torch.zeros(2, 3), num_nodes=4)
    with pytest.raises(ArgumentError, match=r"pass edge_index.t\(\).contiguous\(\)"):
        Graph(torch.zeros(3, 2, dtype=torch.long), num_nodes=4)
