#pragma once
// Reading a file the daemon keeps (the task state): only a regular file is read. Opening a FIFO
// or a device for reading can block start-up for ever, with nothing in the log to say why.

#include <string>

namespace hiapi::shell {

enum class ReadFileResult { Ok, Missing, NotRegular, Error };

/// Reads @p path whole into @p out, without ever blocking on the open.
/// @return Ok, Missing (no such file), NotRegular (a FIFO, device, directory...: not read) or
///         Error (the reason in @p error).
ReadFileResult readRegularFile(const std::string& path, std::string& out, std::string& error);

}  // namespace hiapi::shell
