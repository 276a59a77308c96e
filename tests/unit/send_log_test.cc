#include "hiapi/core/send_log.h"

#include <gtest/gtest.h>

namespace hiapi::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

TEST(SendLog, AtMostLimitSendsInAnyWindow) {
  SendLog log(2, seconds(1));
  EXPECT_TRUE(log.allows(kT0));
  log.record(kT0);
  log.record(kT0 + milliseconds(100));
  EXPECT_FALSE(log.allows(kT0 + milliseconds(500)));
  // The first send leaves the window a second after it: then one more fits.
  EXPECT_EQ(log.nextAllowed(kT0 + milliseconds(500)), kT0 + seconds(1));
  EXPECT_TRUE(log.allows(kT0 + seconds(1)));
  log.record(kT0 + seconds(1));
  EXPECT_EQ(log.nextAllowed(kT0 + seconds(1)), kT0 + milliseconds(1'100));
  // A send taken back frees its place at once.
  log.unrecord();
  EXPECT_TRUE(log.allows(kT0 + seconds(1)));
}

TEST(SendLog, ANewShapeKeepsTheSendsCounted) {
  SendLog log(4, seconds(1));
  log.record(kT0);
  log.record(kT0 + milliseconds(100));
  log.setShape(2, seconds(2));
  EXPECT_FALSE(log.allows(kT0 + milliseconds(1'500)));  // both still in the longer window
  EXPECT_EQ(log.nextAllowed(kT0 + milliseconds(1'500)), kT0 + seconds(2));
  EXPECT_EQ(log.limit(), 2u);
  EXPECT_EQ(log.window(), seconds(2));
}

TEST(SendLog, ALimitBelowOneIsOne) {
  SendLog log(0, seconds(1));
  EXPECT_EQ(log.limit(), 1u);
  log.record(kT0);
  EXPECT_EQ(log.nextAllowed(kT0), kT0 + seconds(1));
}

}  // namespace
}  // namespace hiapi::core
