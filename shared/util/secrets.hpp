// The rules every culvert program applies to a secret it is given: a token's length, and the
// permissions of a file that holds tokens (the supervisor's tokens and --config files, the
// client's --token-file). Runs wherever a secret is read, once, at start.
// Invariant: one rule, one message, in every program; messages name the file and its mode,
// never the secret.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace culvert::shared::util {

// A shorter token can be guessed; the INIT message carries at most 255 bytes.
inline constexpr std::size_t min_token_bytes = 16;
inline constexpr std::size_t max_token_bytes = 255;

// nullopt, or "must be 16-255 bytes, got N bytes".
std::optional<std::string> check_token_length(std::string_view token);

// sshd's StrictModes for a file of secrets, on the status of the descriptor that is read (so the
// file checked is the file read): a regular file, owned by root or by the effective user, with
// no permission for group or others. nullopt, or a message naming `what`, the path and the mode
// with the chmod that fixes it.
std::optional<std::string> check_secret_file(std::string_view what, const std::string& path,
                                             const struct stat& status);

class secret_file_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Opens `path`, applies check_secret_file to the opened file's status and returns its text
// (at most max_bytes); throws secret_file_error with the reason.
std::string read_secret_file(std::string_view what, const std::string& path, std::size_t max_bytes);

}  // namespace culvert::shared::util
