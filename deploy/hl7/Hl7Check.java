// Checks HL7 v2.5.1 ORU^R01 messages (ER7 files) with HAPI HL7v2: parsed into the v2.5.1
// structure with its default validation (the primitive types' forms: NM, DTM, SI…), every
// segment where the structure puts it (the message encodes back to itself, and each
// OBR and OBX is in an order group), and the fields a receiving system needs: MSH-10,
// PID-3, at least one order group, OBR-4, OBR-25 from table 0123, OBX-3, OBX-8 from table
// 0078 and OBX-11 from table 0085. Prints each problem as file
// and text; exits 1 if there is any. Run by deploy/hl7-check.sh; not part of the product.
import ca.uhn.hl7v2.DefaultHapiContext;
import ca.uhn.hl7v2.HL7Exception;
import ca.uhn.hl7v2.HapiContext;
import ca.uhn.hl7v2.model.Message;
import ca.uhn.hl7v2.model.v251.group.ORU_R01_ORDER_OBSERVATION;
import ca.uhn.hl7v2.model.v251.group.ORU_R01_PATIENT_RESULT;
import ca.uhn.hl7v2.model.v251.message.ORU_R01;
import ca.uhn.hl7v2.model.v251.segment.OBR;
import ca.uhn.hl7v2.model.v251.segment.OBX;
import ca.uhn.hl7v2.parser.PipeParser;
import ca.uhn.hl7v2.validation.impl.ValidationContextFactory;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;

public class Hl7Check {
    /** HL7 table 0085, observation result status. */
    static final Set<String> RESULT_STATUS =
        Set.of("C", "D", "F", "I", "N", "O", "P", "R", "S", "U", "W", "X");
    /** HL7 table 0123, result status (of a request, OBR-25). */
    static final Set<String> REQUEST_STATUS =
        Set.of("O", "I", "S", "A", "P", "C", "R", "F", "X", "Y", "Z");
    /** HL7 table 0078 (v2.5.1), abnormal flags. */
    static final Set<String> ABNORMAL_FLAGS = Set.of("L", "H", "LL", "HH", "<", ">", "N", "A",
        "AA", "null", "U", "D", "B", "W", "S", "R", "I", "MS", "VS", "TOX");

    static void require(List<String> problems, String value, String field) {
        if (value == null || value.isEmpty()) {
            problems.add(field + " is empty");
        }
    }

    static int count(String text, String segment) {
        int n = 0;
        for (String line : text.split("\r")) {
            if (line.startsWith(segment + "|")) {
                n++;
            }
        }
        return n;
    }

    public static void main(String[] args) throws Exception {
        HapiContext context = new DefaultHapiContext();
        context.setValidationContext(ValidationContextFactory.defaultValidation());
        PipeParser parser = context.getPipeParser();
        int errors = 0;
        for (String file : args) {
            String text = Files.readString(Path.of(file), StandardCharsets.UTF_8);
            List<String> problems = new ArrayList<>();
            try {
                Message message = parser.parse(text);
                if (!(message instanceof ORU_R01 oru)) {
                    problems.add("not an ORU^R01 of v2.5.1 but " + message.getName());
                } else {
                    String again = parser.encode(message);
                    if (!again.strip().equals(text.strip())) {
                        problems.add("does not encode back to itself (a segment out of place?):\n"
                            + again.replace('\r', '\n'));
                    }
                    require(problems, oru.getMSH().getMessageControlID().getValue(), "MSH-10");
                    String version = oru.getMSH().getVersionID().getVersionID().getValue();
                    if (!"2.5.1".equals(version)) {
                        problems.add("MSH-12 is " + version + ", not 2.5.1");
                    }
                    ORU_R01_PATIENT_RESULT result = oru.getPATIENT_RESULT();
                    require(problems,
                        result.getPATIENT().getPID().getPatientIdentifierList(0).getIDNumber().getValue(),
                        "PID-3");
                    int orders = result.getORDER_OBSERVATIONReps();
                    if (orders == 0) {
                        problems.add("no order group (OBR): an ORU^R01 needs one");
                    }
                    int observations = 0;
                    for (int i = 0; i < orders; i++) {
                        ORU_R01_ORDER_OBSERVATION order = result.getORDER_OBSERVATION(i);
                        OBR obr = order.getOBR();
                        require(problems, obr.getUniversalServiceIdentifier().getIdentifier().getValue(),
                            "OBR-4 of order " + (i + 1));
                        String requested = obr.getResultStatus().getValue();
                        if (!REQUEST_STATUS.contains(requested)) {
                            problems.add("OBR-25 of order " + (i + 1) + " is " + requested
                                + ", not in table 0123");
                        }
                        for (int j = 0; j < order.getOBSERVATIONReps(); j++) {
                            observations++;
                            OBX obx = order.getOBSERVATION(j).getOBX();
                            String where = " of observation " + (j + 1) + " of order " + (i + 1);
                            require(problems, obx.getObservationIdentifier().getIdentifier().getValue(),
                                "OBX-3" + where);
                            for (var flag : obx.getAbnormalFlags()) {
                                String value = flag.getValue();
                                if (value != null && !ABNORMAL_FLAGS.contains(value)) {
                                    problems.add("OBX-8" + where + " is " + value + ", not in table 0078");
                                }
                            }
                            String status = obx.getObservationResultStatus().getValue();
                            if (!RESULT_STATUS.contains(status)) {
                                problems.add("OBX-11" + where + " is " + status + ", not in table 0085");
                            }
                        }
                    }
                    if (orders != count(text, "OBR") || observations != count(text, "OBX")) {
                        problems.add("segments outside the structure: " + count(text, "OBR") + " OBR and "
                            + count(text, "OBX") + " OBX in the text, " + orders + " and " + observations
                            + " in order groups");
                    }
                    System.out.printf("%s: ORU^R01 v2.5.1, %d order groups, %d observations%n",
                        file, orders, observations);
                }
            } catch (HL7Exception e) {
                problems.add(e.getMessage());
            }
            for (String problem : problems) {
                System.out.printf("%s: ERROR: %s%n", file, problem);
            }
            errors += problems.size();
        }
        System.out.printf("files: %d, errors: %d%n", args.length, errors);
        System.exit(errors > 0 ? 1 : 0);
    }
}
