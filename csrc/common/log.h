// One small log sink for the whole C++ core. Python installs a callback that forwards to the
// `logging` module, so the core is quiet unless the user's logging configuration says otherwise.
#pragma once

#include <functional>
#include <string>

namespace spc {

// The numeric values are Python's logging levels, so the binding passes them through unchanged.
enum class LogLevel : int { kDebug = 10, kInfo = 20, kWarning = 30, kError = 40 };

using LogSink = std::function<void(LogLevel, const std::string&)>;

// Replaces the sink; an empty function restores the default, which prints warnings and errors
// to stderr.
void set_log_sink(LogSink sink);

// Messages below `level` are dropped before they are formatted.
void set_log_level(LogLevel level);

bool log_enabled(LogLevel level);

void log_message(LogLevel level, const std::string& message);

}  // namespace spc
