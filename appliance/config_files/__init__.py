"""Queries as code: datasources and queries as plain files (`appliance export DIR`, `GET
/api/v1/export`) and the import that makes a store match them (`appliance import DIR`, `POST
/api/v1/import`). The public face of the package; the format is docs/queries-as-code.md.

Owns nothing beyond what its modules own. Never carries a secret value.
"""

from appliance.config_files.directory import (
    NotAnExport,
    check_export_target,
    read_directory,
    write_export,
)
from appliance.config_files.errors import ImportRefused, InvalidConfigFile
from appliance.config_files.sync import Change, Plan, apply_plan, export_files, plan_import

__all__ = [
    "Change",
    "ImportRefused",
    "InvalidConfigFile",
    "NotAnExport",
    "Plan",
    "apply_plan",
    "check_export_target",
    "export_files",
    "plan_import",
    "read_directory",
    "write_export",
]
