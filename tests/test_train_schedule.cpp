// Learning-rate schedules against values worked out by hand from llama2.c train.py's get_lr (cosine) and its
// linear analogue: warm-up, mid-decay points, the floor, constant.

#include <catch2/catch.hpp>

#include "polyformer/train/schedule.hpp"

namespace pf = polyformer;

TEST_CASE("LearningRateSchedule: warm-up, cosine and linear decay to the floor, constant", "[train][schedule]") {
  pf::LearningRateSchedule s{6e-4, 6e-5, 10, 100, pf::LearningRateDecay::cosine};
  s.validate();
  CHECK(s.at(0) == 0.0);
  CHECK(s.at(5) == Approx(3e-4).epsilon(1e-12));
  CHECK(s.at(10) == Approx(6e-4).epsilon(1e-12));
  CHECK(s.at(28) == Approx(5.4843459e-4).epsilon(1e-7));   // r = 0.2: ½(1 + cos 0.2π) = 0.90450850
  CHECK(s.at(55) == Approx(3.3e-4).epsilon(1e-12));        // r = 0.5: halfway
  CHECK(s.at(100) == Approx(6e-5).epsilon(1e-12));
  CHECK(s.at(150) == Approx(6e-5).epsilon(1e-12));         // the floor after decay_steps
  s.decay = pf::LearningRateDecay::linear;
  CHECK(s.at(28) == Approx(4.92e-4).epsilon(1e-12));       // r = 0.2: 6e-5 + 0.8·5.4e-4
  CHECK(s.at(55) == Approx(3.3e-4).epsilon(1e-12));
  CHECK(s.at(1000) == Approx(6e-5).epsilon(1e-12));
  s.decay = pf::LearningRateDecay::constant;
  CHECK(s.at(3) == Approx(1.8e-4).epsilon(1e-12));
  CHECK(s.at(1000) == 6e-4);
  const pf::LearningRateSchedule no_warmup{1e-3, 0.0, 0, 4, pf::LearningRateDecay::linear};
  CHECK(no_warmup.at(0) == 1e-3);
  CHECK(no_warmup.at(2) == Approx(5e-4).epsilon(1e-12));
  CHECK_THROWS_AS((pf::LearningRateSchedule{1e-3, 2e-3, 0, 4, pf::LearningRateDecay::linear}.validate()), pf::config_error);
  CHECK_THROWS_AS((pf::LearningRateSchedule{1e-3, 0.0, 10, 10, pf::LearningRateDecay::cosine}.validate()), pf::config_error);
  CHECK_THROWS_AS((pf::LearningRateSchedule{1e-3, 0.0, -1, 0}.validate()), pf::config_error);
}
