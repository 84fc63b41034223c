#include "common/log.h"

#include <fmt/format.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace spc {
namespace {

std::mutex sink_mutex;
LogSink current_sink;
std::atomic<int> current_level{static_cast<int>(LogLevel::kWarning)};

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "LOG";
}

}  // namespace

void set_log_sink(LogSink sink) {
  std::lock_guard<std::mutex> lock(sink_mutex);
  current_sink = std::move(sink);
}

void set_log_level(LogLevel level) { current_level.store(static_cast<int>(level)); }

bool log_enabled(LogLevel level) { return static_cast<int>(level) >= current_level.load(); }

void log_message(LogLevel level, const std::string& message) {
  if (!log_enabled(level)) {
    return;
  }

  // Copy the sink under the lock and call it outside, so a sink that logs cannot deadlock.
  LogSink sink;
  {
    std::lock_guard<std::mutex> lock(sink_mutex);
    sink = current_sink;
  }
  if (sink) {
    sink(level, message);
  } else {
    fmt::print(stderr, "seqpatchcore {}: {}\n", level_name(level), message);
  }
}

}  // namespace spc
