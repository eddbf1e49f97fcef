"""The broker's booking API (beside handlers.py, served by app.py):

GET    api/bookings         the bookings the caller may see (instructors: all; a student: their course's and own)
POST   api/bookings         {"course", "vgpus", "memory", "count", "start", "end", "user"?}: 201 with the booking;
                            400 naming the field, 403 not the caller's to book, 409 it cannot be honoured (why)
DELETE api/bookings/{id}    an instructor of its course, or the student it is for (never a static one)

An instructor books for the courses whose hub group they are in; a student only for themself, in their
own course, where the course allows it (``student_bookings`` in c.Broker.courses).
"""

from __future__ import annotations

from ..core.booking_rules import parse_booking
from ..errors import KernelLaunchError
from ..vgpu import VGPURequestError, short
from .api_auth import BrokerHandler
from .bookings import refusal_status


class BookingsHandler(BrokerHandler):
    async def get(self) -> None:
        self.reply({"bookings": self.broker.booked.visible(self.user, self.groups, self.instructor)})

    async def post(self) -> None:
        body = self.json_body()
        if body is None:
            return
        broker, desk = self.broker, self.broker.booked
        own_course = broker.admission.course_of(self.groups)
        if not self.instructor:  # a student's booking is their own, in their own course, unless they say otherwise
            body = {"course": own_course, "user": self.user, **body}
        try:
            booking = parse_booking(body, by=self.user, zone=desk.bookings.rules.zone)
            desk.bookings.rules.who_may_book(booking, self.user, self.groups, self.instructor, own_course)
            # each kernel must be one a student may launch: the per-kernel limits, a device that large
            await broker.kernel_policy.check(booking.request, image=broker.settings.image, view=broker.view)
            booked = await desk.book(booking)
        except VGPURequestError as err:
            return self.refuse(refusal_status(err), str(err), field=err.field)
        except KernelLaunchError as err:
            return self.refuse(400, str(err), field="memory")
        self.reply({"booking": booked.as_dict()}, 201)


class BookingHandler(BrokerHandler):
    async def delete(self, booking_id: str) -> None:
        desk = self.broker.booked
        booking = desk.bookings.items.get(booking_id)
        theirs = booking is not None and (booking.course in self.groups if self.instructor
                                          else booking.user == self.user)
        if not theirs:
            return self.refuse(404, f'no booking "{short(booking_id)}" of yours')
        if booking.static:
            return self.refuse(409, "this booking comes from c.Broker.bookings; change the broker's config to "
                                    "remove it", field="id")
        await desk.cancel(booking_id)
        self.reply({"removed": booking.as_dict()})


def booking_routes(prefix: str) -> list:
    base = "/" + prefix.strip("/")
    return [
        (rf"{base}/api/bookings", BookingsHandler),
        (rf"{base}/api/bookings/([0-9a-z-]{{1,40}})", BookingHandler),
    ]


__all__ = ["booking_routes"]
