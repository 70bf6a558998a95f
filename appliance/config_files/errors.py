"""What goes wrong reading or importing configuration files: one error naming the file, the line,
the column and the field, and one for an import the target cannot take as it stands.

Owns these two errors. Never puts a value from a file in a message: names and places only (a
file path is named once it passed the path check; before, only its position in the listing).
"""

from __future__ import annotations

from appliance.errors import Conflict, Unprocessable


class InvalidConfigFile(Unprocessable):
    """A file of an export is malformed, or what it says cannot be saved: 422, exit code 2.

    The message reads like a compiler's: `queries/orders.meta.json:4:17: parameters[0].type: …`.
    `file` is the path inside the directory; `line` and `column` are 1-based.
    """

    code = "invalid_config_file"
    exit_code = 2

    def __init__(self, file: str, problem: str, *, line: int | None = None,
                 column: int | None = None, field: str | None = None) -> None:
        where = file
        if line is not None:
            where += f":{line}:{column or 1}"
        message = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(message, field=f"files.{file}", line=line, column=column)
        self.file = file
        self.problem = problem
        self.file_field = field


class ImportRefused(Conflict):
    """The files are well formed but the target cannot take them as they stand (a name held by
    another id, a destination change over sealed secrets, a datasource still in use): 409, exit
    code 2. Nothing was changed."""

    code = "import_refused"
    exit_code = 2
