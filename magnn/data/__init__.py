from .info import DatasetInfo

__all__ = ["DatasetInfo"]
